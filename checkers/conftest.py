pytest_plugins = ["checkers.plugin"]
