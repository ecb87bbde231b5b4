from speechguide.cli import run

run()
