"""`train --config configs/X.yaml [--set a.b=c ...]`: the pre-training / fine-tuning loop (not built yet)."""

import sys


def main(argv: list[str] | None = None) -> int:
    print("train: not implemented yet (the trainer issue is still open); "
          "shard-videos and bench work today, see README.md", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
