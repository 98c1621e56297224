"""The native sidecar proxy runtime (reads only the native backend output)."""
