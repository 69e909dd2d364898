"""The trading service (`quantlm serve`): the live engine behind an authenticated HTTP API and a dashboard.

- `state.LiveService`: the engine host (one Session on one worker thread; replayed or pushed bars);
- `operations`: what each route does to the engine (runs on that worker);
- `auth`: API keys, roles, dashboard sessions, CSRF, failed-login rate limits;
- `schemas`: strict request models; `api`: the /api/v1 routes; `app.create_app`: the FastAPI app.
"""
