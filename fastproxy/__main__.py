from fastproxy.cli import entry

entry()
