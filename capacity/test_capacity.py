"""Tests of scripts/capacity's model: python3 -m unittest discover capacity."""
import importlib.machinery
import importlib.util
import io
import os
import unittest
from contextlib import redirect_stdout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
loader = importlib.machinery.SourceFileLoader("capacity", os.path.join(ROOT, "scripts", "capacity"))
spec = importlib.util.spec_from_loader("capacity", loader)
capacity = importlib.util.module_from_spec(spec)
loader.exec_module(capacity)

FIGURES = {
    "stream_bytes": {"h1": 1000, "tls-h2": 50000},
    "idle": 0, "replay": 0,
    "ingest_ns": 1000, "ingest_max": 100_000,
    "user_ns": 10_000, "broadcast_ns": 1000, "connect_ns": 0, "proxy_bytes": 0,
}


def args(**kw):
    a = capacity.args([])
    a.headroom = 1.0
    a.min_nodes = 1
    a.max_streams_per_node = 1e12
    a.node_mem_gib = 1
    a.node_cores = 1
    for k, v in kw.items():
        setattr(a, k, v)
    return a


class Model(unittest.TestCase):
    def test_memory_bounds_the_count(self):
        r = capacity.plan(FIGURES, args(connections=2**30 // 1000 * 3, per_user_rate=0, broadcast_rate=0))
        self.assertEqual((r["nodes"], r["bound_by"]), (3, "memory"))
        r = capacity.plan(FIGURES, args(connections=2**30 // 1000 * 3, per_user_rate=0, broadcast_rate=0,
                                        transport="tls-h2"))
        self.assertEqual(r["nodes"], 150)

    def test_cpu_counts_ingest_on_every_node(self):
        # 10,000 users x 1 event/s: 10,000 records/s, 0.01 s of ingest each
        # per node; 0.1 core of deliveries in all.
        r = capacity.plan(FIGURES, args(connections=10_000, per_user_rate=1.0, broadcast_rate=0))
        self.assertAlmostEqual(r["ingest_cores_per_node"], 0.01)
        self.assertEqual(r["nodes"], 1)
        self.assertAlmostEqual(r["cores_per_node"], 0.11)
        # Broadcasts: each reaches every stream.
        r = capacity.plan(FIGURES, args(connections=1_000_000, per_user_rate=0, broadcast_rate=2.0))
        self.assertEqual((r["nodes"], r["bound_by"]), (3, "cpu"))

    def test_past_one_nodes_ingest_no_count_helps(self):
        r = capacity.plan(FIGURES, args(connections=200_000, per_user_rate=1.0, broadcast_rate=0))
        self.assertIn("more nodes do not help", r["limit"])
        self.assertNotIn("nodes", r)

    def test_blast_radius_and_minimum(self):
        r = capacity.plan(FIGURES, args(connections=1000, per_user_rate=0, max_streams_per_node=300))
        self.assertEqual((r["nodes"], r["bound_by"]), (4, "max streams per node"))
        r = capacity.plan(FIGURES, args(connections=10, per_user_rate=0, min_nodes=2))
        self.assertEqual(r["nodes"], 2)

    def test_the_measured_figures_load_and_the_table_prints(self):
        f = capacity.load(os.path.join(ROOT, "capacity", "figures.json"))
        self.assertGreater(f["stream_bytes"]["h1"], 0)
        out = io.StringIO()
        with redirect_stdout(out):
            self.assertEqual(capacity.main(["--table"]), 0)
        self.assertEqual(out.getvalue().count("\n| 1"), 18)


if __name__ == "__main__":
    unittest.main()
