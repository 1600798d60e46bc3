"""Convert the official CascadePSP checkpoint to our .safetensors format (same as ``cascadepsp convert-official``).

    python scripts/convert_official.py ~/.cache/cascadepsp/official/model official.safetensors [--half]
"""

import sys

from cascadepsp.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert-official", *sys.argv[1:]]))
