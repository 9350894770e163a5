"""HTTP routers: thin layers that validate, call the core and return pydantic schemas."""

from .ops import router as ops_router
from .predict import router as predict_router
from .tasks import router as tasks_router
from .v2 import install_v2_openapi
from .v2 import router as v2_router

__all__ = ["install_v2_openapi", "ops_router", "predict_router", "tasks_router", "v2_router"]
