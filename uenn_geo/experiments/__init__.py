"""Applications built on the library: the paper experiment and the benchmarks."""
