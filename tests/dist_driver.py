"""Runs several `t3s` commands in one process, so that tests/test_distributed.py pays for one torchrun start-up
(two processes importing torch, transformers and TRL) instead of one per command. Each command goes through
`t3s.cli.main`, exactly as `torchrun ... -m t3s COMMAND ...` runs it.

Usage: torchrun --standalone --nproc_per_node 2 tests/dist_driver.py COMMANDS.json
COMMANDS.json: a list of argument lists; ["selftest", OUT.json] checks the t3s.dist helpers themselves;
["env", {NAME: VALUE or null}] sets (null: unsets) variables for the commands after it, as a launcher exports them;
["per-rank", OUT, [ARGV of rank 0, ARGV of rank 1, ...]] runs another command on each process, expected to fail:
OUT.<rank>.json records its exit code and what it printed on stderr.
"""

import json
import sys
from pathlib import Path


def selftest(out: str) -> None:
    """Sharding, ordered gathering, error propagation and the shared atomic directory, on every process."""
    import random

    from accelerate.utils import gather_object

    from t3s import T3SError, dist

    items = list(range(11))
    costs = [random.Random(0).randint(1, 50) for _ in items]
    seen: list[int] = []

    def fn(part: list[int]) -> list[int]:
        seen.extend(part)
        return [10 * x for x in part]

    got = dist.map_rows(fn, items, costs)
    parts = gather_object([seen])
    try:
        dist.on_main(lambda: (_ for _ in ()).throw(T3SError("boom on the main process")))
        error = None
    except T3SError as e:
        error = str(e)
    with dist.atomic_dir(Path(out).with_suffix(".dir")) as tmp:
        if dist.is_main():
            (tmp / "x.txt").write_text("main")
    visible = (Path(out).with_suffix(".dir") / "x.txt").read_text()  # on every process, after the rename
    results = gather_object(
        [{"rank": dist.rank(), "world": dist.world(), "got": got, "error": error, "visible": visible}]
    )
    if dist.is_main():
        Path(out).write_text(json.dumps({"results": results, "parts": parts, "items": items, "costs": costs}))


def per_rank(out: str, argvs: list[list[str]]) -> None:
    import contextlib
    import io

    from t3s import dist
    from t3s.cli import main as t3s_main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = t3s_main(argvs[dist.rank()])
    Path(f"{out}.{dist.rank()}.json").write_text(json.dumps({"code": code, "stderr": err.getvalue()}))


def main() -> int:
    import os

    from t3s.cli import main as t3s_main

    for argv in json.loads(Path(sys.argv[1]).read_text()):
        if argv[0] == "selftest":
            selftest(argv[1])
            continue
        if argv[0] == "env":
            for k, v in argv[1].items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            continue
        if argv[0] == "per-rank":
            per_rank(argv[1], argv[2])
            continue
        code = t3s_main(argv)
        if code:
            print(f"dist_driver: `t3s {' '.join(argv)}` exited with {code}", file=sys.stderr)
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
