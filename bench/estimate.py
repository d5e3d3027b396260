"""Back-of-the-envelope compute, time and memory for the paper-scale recipes: the arithmetic lives in
`t3s/estimate.py` (so that `t3s run --plan` can print it); this script is its command line.

    python bench/estimate.py            # the table
    python bench/estimate.py --check    # exit 1 if a recipe's header disagrees with the script
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from t3s.estimate import *  # noqa: E402,F403 -- the arithmetic, its constants and the recipes
from t3s.estimate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
