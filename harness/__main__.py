from harness.frontends.cli import entry

entry()
