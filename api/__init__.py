"""The HTTP side of pretextlab: the FastAPI app, its settings, and the job store (api.db). Never loads torch."""
