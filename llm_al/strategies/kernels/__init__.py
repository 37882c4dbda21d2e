"""The geometric kernels behind the diversity strategies, sized for 10^5-10^6 examples: k-center and
k-means (`scale`), k-NN graphs and facility location over them (`knn`)."""
