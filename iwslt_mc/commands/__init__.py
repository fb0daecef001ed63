"""One module per subcommand: ``add_parser(sub)`` (stdlib imports only) and ``run(args) -> int``."""
