"""QuietLine services: one sub-package per service process, plus the shared `kit`."""
