"""Datasets: obtain BIG-bench's sources, build records of the four context kinds, split them by
context (never by example), and load them. `schema` is the one record format; `prepare` is
`hyperadapter data prepare`."""
