"""``luminary.util.concurrent``: standard-library concurrency APIs over Luminary tasks."""
