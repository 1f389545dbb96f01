from facepoison.cli.main import entry

entry()
