"""Image datasets: the sources `prepare` reads (sources/), the Parquet files of the pipeline (writer.py
writes them, images.py maps them for reading), the split, the dataset card, augmentation, stored logits."""
