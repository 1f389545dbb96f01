"""The ``facepoison`` command line: one entry point, one module per subcommand (``main(argv) -> int``)."""
