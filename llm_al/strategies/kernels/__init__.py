"""The geometric kernels behind the diversity strategies, one implementation each with its fast path
inside: k-center (`kcenter`: the greedy loop, the lazy blocked loop for 10^5-10^6 rows, torch on a
GPU), k-means (`kmeans`: dense Lloyd, and fit-on-a-sample for large pools), facility location
(`facility`: dense and over a k-NN graph), k-NN graphs (`knn`), and the row access they share (`rows`)."""
