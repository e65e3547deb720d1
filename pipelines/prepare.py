"""Stage `prepare`: the data source -> stratified, seeded train/val/test Parquet splits and a dataset card."""

from __future__ import annotations

import logging

from pipelines.atomic import write_json
from pipelines.config import Params
from pipelines.data import dataset_card, stratified_split, subset, to_table, write_parquet
from pipelines.paths import SPLITS, Paths
from pipelines.sources import load_source
from pipelines.stage import run_stage

log = logging.getLogger(__name__)


def prepare(params: Params, paths: Paths = Paths()) -> dict:
    """Write the three splits and the card; return the card."""
    source = load_source(params.data)
    data = source.data
    rows = source.split_rows or stratified_split(data.labels, params.data.split, params.seed)
    splits = {name: subset(data, rows[name]) for name in SPLITS}
    for name, part in splits.items():
        write_parquet(paths.split(name), to_table(part))
    card = dataset_card(splits, params.data.source, params.data.normalize)
    write_json(paths.card, card)
    log.info("prepared %s: %s", params.data.source, {name: len(part) for name, part in splits.items()})
    return card


if __name__ == "__main__":
    run_stage(prepare)
