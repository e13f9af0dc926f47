"""Local development harness: real worker processes behind kwok's fake pods, a real Prometheus, and `make demo`.

kwok pods run no containers. `workers.PodMirror` starts one real `hdc-worker serve` process per worker pod the
operator created, and writes a Prometheus file_sd file whose targets carry the labels the ServiceMonitor gives
the pods in a real cluster (namespace, pod, workload). `prometheus` runs a real Prometheus on that file, with the
PrometheusRules the operator applied. `demo` puts it all together. docs/testing.md, "The pod mirror".
"""
