"""Tables: Private Evolution on a table with a public schema (Tab-PE).

``schema`` (the public schema and the codes), ``data`` (CSV and Parquet loaders), ``model``
(the random and variation APIs), ``embedding`` (the vote's feature space), ``metrics``
(marginals, Wasserstein, downstream utility, report views) and ``table_io`` (the population's
Parquet file and the export's CSV and Parquet).
"""
