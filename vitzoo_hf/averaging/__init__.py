"""Weight averaging over a zoo (the paper's Section 4.2): epochs of one run, model soups, greedy soups, Git Re-Basin.

* `methods` — the averaging engine and the experiments (rows of plain dicts);
* `rebasin` — weight matching and MergeMany over the ViT symmetries of `vitzoo_hf.symmetries`;
* `report` — `vitzoo average`: tables, figures and a saved averaged model.
"""
