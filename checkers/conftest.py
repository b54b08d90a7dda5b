pytest_plugins = ["judge.plugin"]
