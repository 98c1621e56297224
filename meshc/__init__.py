"""meshc: a mesh-as-code compiler. One `.mesh` spec, every service mesh."""

__version__ = "0.1.0"
