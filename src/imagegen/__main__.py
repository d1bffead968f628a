from imagegen.cli import app

app()
