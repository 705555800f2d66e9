"""The BigQuery store: `store.BigQueryStore` and the parts it is made of."""
