"""HTTP routes: validate, call one `Engine` method, shape the response."""

from fastapi import Request

from service.engine import Engine


def get_engine(request: Request) -> Engine:
    return request.app.state.engine
