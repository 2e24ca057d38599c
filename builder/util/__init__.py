"""Small shared helpers with one rule each: atomic files, Parquet partitions."""
