"""Data in and out: pools and their formats (`pool`), the embedded demo data (`demo`), reference
corpora (`reference`), writing subsets (`export`) and the annotation round trip (`annotate`)."""
