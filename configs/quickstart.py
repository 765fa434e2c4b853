"""The README's first command: the whole pipeline on the embedded phantom data (no download),
on a CPU, in minutes; the report is <workdir>/report/report.html. See configs/pipeline.py."""
from polypjax import configlib


def get_config():
    return configlib.load_config("pipeline", "quickstart")
