"""``python -m fedsim``: the entry point torchrun uses (``torchrun ... -m fedsim run``)."""

from cli.app import main

if __name__ == "__main__":
    main()
