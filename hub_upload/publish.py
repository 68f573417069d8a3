"""Publish a zoo folder to the Hub: `python hub_upload/publish.py ZOO_DIR --namespace ORG [...]`.

A thin entry over `vitzoo_hf.publish` (the same as `vitzoo publish`); see `--help`.
"""

import sys

from vitzoo_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["publish", *sys.argv[1:]]))
