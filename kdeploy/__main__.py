"""`python -m kdeploy` (what `torchrun ... -m kdeploy compress ...` starts): the `kdeploy`
command."""

from kdeploy.cli import main

if __name__ == "__main__":  # importing this module (pkgutil walks it) runs nothing
    main()
