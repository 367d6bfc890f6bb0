"""The quickstart demo: a sample corpus and the pipeline that runs every stage on it (CPU)."""
