"""The local hub with the real huggingface_hub client: every operation the zoo relies on."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import huggingface_hub
import pytest
from hub_fixtures import hf_cache, hub, make_folder, paged_hub  # noqa: F401
from huggingface_hub import (
    HfApi,
    HfFileSystem,
    ModelCard,
    ModelCardData,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

REPO = "zoo-org/vit-a"


def _safetensors_bytes(n_floats: int) -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [n_floats], "data_offsets": [0, 4 * n_floats]},
                         "__metadata__": {"format": "pt"}}).encode()
    return struct.pack("<Q", len(header)) + header + os.urandom(4 * n_floats)


@pytest.fixture
def populated(hub, tmp_path: Path):  # noqa: F811
    api = HfApi()
    api.create_repo(REPO)
    weights = _safetensors_bytes(3000)
    folder = make_folder(tmp_path / "up", {
        "config.json": '{"hidden_size": 8}',
        "model.safetensors": weights,
        "ckpt/e 1/w+x.txt": "spaces and plus",
    })
    info = api.upload_folder(folder_path=folder, repo_id=REPO, commit_message="first")
    return api, folder, info, weights


def test_create_upload_and_noop_reupload(populated):
    api, folder, info, _ = populated
    assert api.repo_exists(REPO)
    commits = api.list_repo_commits(REPO)
    assert [c.commit_id for c in commits][0] == info.oid
    assert [c.title for c in commits] == ["first", "initial commit"]
    again = api.upload_folder(folder_path=folder, repo_id=REPO, commit_message="again")
    assert again.oid == info.oid  # nothing changed: no new commit
    assert len(api.list_repo_commits(REPO)) == 2
    with pytest.raises(huggingface_hub.errors.HfHubHTTPError) as e:
        api.create_repo(REPO)
    assert e.value.response.status_code == 409
    assert api.create_repo(REPO, exist_ok=True).repo_id == REPO


def test_repo_info_blobs_and_tree(populated):
    api, _, info, weights = populated
    mi = api.model_info(REPO, files_metadata=True)
    assert mi.sha == info.oid
    sib = {s.rfilename: s for s in mi.siblings}
    assert set(sib) == {".gitattributes", "config.json", "model.safetensors", "ckpt/e 1/w+x.txt"}
    assert sib["model.safetensors"].lfs.sha256 == hashlib.sha256(weights).hexdigest()
    assert sib["model.safetensors"].size == len(weights)
    assert sib["config.json"].lfs is None
    content = b'{"hidden_size": 8}'
    git_sha1 = hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
    assert sib["config.json"].blob_id == git_sha1
    tree = {e.path: e for e in api.list_repo_tree(REPO, recursive=True)}
    assert {"ckpt", "ckpt/e 1"} <= set(tree)
    sub = [e.path for e in api.list_repo_tree(REPO, path_in_repo="ckpt/e 1")]
    assert sub == ["ckpt/e 1/w+x.txt"]
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree(REPO, path_in_repo="nope"))
    paths = api.get_paths_info(REPO, ["config.json", "ckpt", "missing.txt"])
    assert sorted(p.path for p in paths) == ["ckpt", "config.json"]


def test_branches_tags_and_downloads_by_ref(populated, tmp_path):
    api, _, info, weights = populated
    api.create_branch(REPO, branch="run/epoch-1")
    api.upload_file(path_or_fileobj=b"epoch one", path_in_repo="notes.txt", repo_id=REPO, revision="run/epoch-1")
    api.create_tag(REPO, tag="v1", revision=info.oid)
    with pytest.raises(huggingface_hub.errors.HfHubHTTPError):
        api.create_branch(REPO, branch="run/epoch-1")
    api.create_branch(REPO, branch="run/epoch-1", exist_ok=True)
    refs = api.list_repo_refs(REPO)
    branches = {b.name: b.target_commit for b in refs.branches}
    assert set(branches) == {"main", "run/epoch-1"} and branches["main"] == info.oid
    assert branches["run/epoch-1"] != info.oid
    assert {t.name: t.target_commit for t in refs.tags} == {"v1": info.oid}

    assert Path(hf_hub_download(REPO, "notes.txt", revision="run/epoch-1")).read_bytes() == b"epoch one"
    assert Path(hf_hub_download(REPO, "ckpt/e 1/w+x.txt", revision="run/epoch-1")).read_text() == "spaces and plus"
    assert Path(hf_hub_download(REPO, "model.safetensors", revision="v1")).read_bytes() == weights
    by_sha = hf_hub_download(REPO, "config.json", revision=branches["run/epoch-1"])
    assert json.loads(Path(by_sha).read_text()) == {"hidden_size": 8}
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "notes.txt", revision="main")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "config.json", revision="no-such-branch")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("zoo-org/missing", "config.json")

    snap = Path(snapshot_download(REPO, revision="run/epoch-1", local_dir=tmp_path / "snap"))
    assert (snap / "notes.txt").read_bytes() == b"epoch one"
    assert (snap / "model.safetensors").read_bytes() == weights
    assert api.file_exists(REPO, "notes.txt", revision="run/epoch-1")
    assert not api.file_exists(REPO, "notes.txt")
    assert api.revision_exists(REPO, "v1") and not api.revision_exists(REPO, "v2")
    api.delete_branch(REPO, branch="run/epoch-1")
    assert [b.name for b in api.list_repo_refs(REPO).branches] == ["main"]


def test_hffilesystem_ls_glob_and_range_reads(populated):
    _, _, _, weights = populated
    fs = HfFileSystem()
    assert sorted(fs.ls(REPO, detail=False)) == sorted(
        f"{REPO}/{p}" for p in (".gitattributes", "config.json", "model.safetensors", "ckpt"))
    assert fs.glob(f"{REPO}/**/*.txt") == [f"{REPO}/ckpt/e 1/w+x.txt"]
    assert fs.info(f"{REPO}/model.safetensors")["size"] == len(weights)
    with fs.open(f"{REPO}/model.safetensors", "rb", block_size=1000) as f:
        f.seek(5000)
        assert f.read(3000) == weights[5000:8000]
        f.seek(len(weights) - 10)
        assert f.read(100) == weights[-10:]
    assert fs.read_text(f"{REPO}/ckpt/e 1/w+x.txt") == "spaces and plus"


def test_get_safetensors_metadata(populated):
    meta = huggingface_hub.get_safetensors_metadata(REPO)
    assert meta.files_metadata["model.safetensors"].tensors["w"].shape == [3000]
    assert meta.parameter_count == {"F32": 3000}


def test_list_models_author_filter_and_pagination(paged_hub):  # noqa: F811
    api = HfApi()
    for name, base in [("base", None), ("ft-1", "zoo-org/base"), ("ft-2", "zoo-org/base"), ("other", None)]:
        api.create_repo(f"zoo-org/{name}")
        card = ModelCard.from_template(ModelCardData(license="mit", library_name="transformers",
                                                     base_model=base, tags=["vit-zoo"]))
        card.push_to_hub(f"zoo-org/{name}")
    api.create_repo("someone/else")
    assert sorted(m.id for m in api.list_models(author="zoo-org")) == [
        "zoo-org/base", "zoo-org/ft-1", "zoo-org/ft-2", "zoo-org/other"]
    assert sorted(m.id for m in api.list_models(filter="base_model:zoo-org/base")) == ["zoo-org/ft-1", "zoo-org/ft-2"]
    assert sorted(m.id for m in api.list_models(filter=["base_model:finetune:zoo-org/base", "license:mit"])) == [
        "zoo-org/ft-1", "zoo-org/ft-2"]
    assert [m.id for m in api.list_models(search="else")] == ["someone/else"]
    full = next(iter(api.list_models(author="zoo-org", search="ft-1", cardData=True, full=True)))
    assert full.card_data["base_model"] == "zoo-org/base"
    assert "vit-zoo" in full.tags and "transformers" in full.tags
    # 5 repos at 2 per page: the client had to follow Link headers
    assert len(list(api.list_models())) == 5


def test_model_card_push_and_load(hub):  # noqa: F811
    HfApi().create_repo(REPO)
    card = ModelCard.from_template(ModelCardData(license="mit", base_model="zoo-org/parent"),
                                   model_description="A tiny ViT.")
    card.push_to_hub(REPO)
    loaded = ModelCard.load(REPO)
    assert loaded.data.base_model == "zoo-org/parent"
    assert "A tiny ViT." in loaded.text
    info = HfApi().model_info(REPO)
    assert info.card_data["license"] == "mit"
    assert "base_model:finetune:zoo-org/parent" in info.tags


def test_collections(hub):  # noqa: F811
    api = HfApi()
    api.create_repo(REPO)
    api.create_repo("zoo-org/meta", repo_type="dataset")
    col = api.create_collection("ViT zoo", namespace="zoo-org", description="all of it")
    same = api.create_collection("ViT zoo", namespace="zoo-org", exists_ok=True)
    assert same.slug == col.slug
    api.add_collection_item(col.slug, REPO, "model", note="first")
    api.add_collection_item(col.slug, "zoo-org/meta", "dataset")
    api.add_collection_item(col.slug, REPO, "model", exists_ok=True)
    with pytest.raises(huggingface_hub.errors.HfHubHTTPError):
        api.add_collection_item(col.slug, "zoo-org/missing", "model")
    got = api.get_collection(col.slug)
    assert [(i.item_id, i.item_type) for i in got.items] == [(REPO, "model"), ("zoo-org/meta", "dataset")]
    assert got.items[0].note == "first"
    api.update_collection_item(col.slug, got.items[1].item_object_id, position=-1)
    assert api.get_collection(col.slug).items[0].item_id == "zoo-org/meta"
    api.delete_collection_item(col.slug, got.items[0].item_object_id)
    assert [i.item_id for i in api.get_collection(col.slug).items] == ["zoo-org/meta"]
    assert [c.slug for c in api.list_collections(owner="zoo-org")] == [col.slug]
    api.delete_collection(col.slug)
    with pytest.raises(huggingface_hub.errors.HfHubHTTPError):
        api.get_collection(col.slug)


def test_delete_file_and_folder_and_private_repo(hub, monkeypatch):  # noqa: F811
    api = HfApi()
    api.create_repo(REPO, private=True)
    api.upload_file(path_or_fileobj=b"a", path_in_repo="d/a.txt", repo_id=REPO)
    api.upload_file(path_or_fileobj=b"b", path_in_repo="d/b.txt", repo_id=REPO)
    api.delete_file("d/a.txt", repo_id=REPO)
    assert api.list_repo_files(REPO) == [".gitattributes", "d/b.txt"]
    with pytest.raises(EntryNotFoundError):
        api.delete_file("d/a.txt", repo_id=REPO)
    api.delete_folder("d", repo_id=REPO)
    assert api.list_repo_files(REPO) == [".gitattributes"]
    assert api.model_info(REPO).private
    anonymous = HfApi(token=False)
    with pytest.raises(RepositoryNotFoundError):
        anonymous.model_info(REPO)
    assert REPO not in [m.id for m in anonymous.list_models()]
    assert REPO in [m.id for m in api.list_models()]
    api.delete_repo(REPO)
    assert not api.repo_exists(REPO)
    api.delete_repo(REPO, missing_ok=True)
