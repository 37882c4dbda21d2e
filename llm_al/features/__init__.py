"""Per-example features: tokenising and packing (`formatting`), the scoring engine (`engine`), the
on-disk cache (`cache`), the probe registry (`probes`) and the n-gram overlap index (`overlap`, `dsir`)."""
