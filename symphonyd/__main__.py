"""`python -m symphonyd` (and the zipapp's entry point)."""

from symphonyd.cli.main import main

if __name__ == "__main__":
    main()
