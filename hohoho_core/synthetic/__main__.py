"""``python -m hohoho_core.synthetic --out DIR --studies N --seed S [...]``."""

from hohoho_core.synthetic.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
