"""OpenAPI 3.1 description of the portal's JSON API, built from the pydantic bodies in
``portal.views.api`` so the document cannot drift from what the API accepts."""

from __future__ import annotations

from portal.views.api import BODIES

ERROR = {"type": "object", "required": ["error", "reason"],
         "properties": {"error": {"type": "string"}, "reason": {"type": "string"}}}

# (method, path, summary, body, success status, roles)
ROUTES: tuple[tuple[str, str, str, str | None, int, str], ...] = (
    ("post", "/api/v1/session", "Sign in (password and TOTP code, every account)",
     "SessionIn", 200, "anyone"),
    ("delete", "/api/v1/session", "Sign out", None, 200, "anyone"),
    ("get", "/api/v1/catalog", "The dataset catalog (search with ?q=)", None, 200, "anyone"),
    ("get", "/api/v1/applications", "Applications visible to the caller", None, 200,
     "researcher, chair, expert"),
    ("post", "/api/v1/applications", "Draft an application", "ApplicationIn", 201,
     "researcher"),
    ("get", "/api/v1/applications/{application_id}", "One application, with the applicant's "
     "eligibility (what it relied on: self-declared or verified claims) and the caller's "
     "allowed actions", None, 200, "researcher, chair, expert"),
    ("post", "/api/v1/applications/{application_id}/submit", "Submit, or resubmit after a "
     "revision request (refused with reasons when ineligible)", None, 200, "researcher"),
    ("post", "/api/v1/applications/{application_id}/assign", "Assign a conflict-free panel "
     "(under review: add experts to it)", "AssignIn", 200, "chair"),
    ("post", "/api/v1/applications/{application_id}/scores", "Score the five dimensions",
     "ScoresIn", 200, "expert"),
    ("get", "/api/v1/applications/{application_id}/summary", "Scores side by side; scores "
     "whose expert is conflicted now are listed as excluded", None, 200, "chair"),
    ("post", "/api/v1/applications/{application_id}/decision", "Approve, request revision "
     "or reject", "DecisionIn", 200, "chair"),
    ("post", "/api/v1/applications/{application_id}/agreement", "Sign the data use "
     "agreement; creates the grant on the gateway", "AgreementIn", 200, "researcher"),
)


def document() -> dict:
    schemas = {"Error": ERROR}
    for name, model in BODIES.items():
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = schema
    paths: dict[str, dict] = {}
    for method, path, summary, body, status, roles in ROUTES:
        operation: dict = {
            "summary": summary,
            "description": f"Allowed for: {roles}.",
            "operationId": method + "_" + "_".join(
                part.strip("{}") for part in path.strip("/").split("/")),
            "responses": {
                str(status): {"description": "done",
                              "content": {"application/json": {"schema": {}}}},
                "4XX": {"description": "refused, with a reason",
                        "content": {"application/json": {"schema": {
                            "$ref": "#/components/schemas/Error"}}}},
            },
        }
        if "{application_id}" in path:
            operation["parameters"] = [{"name": "application_id", "in": "path",
                                        "required": True,
                                        "schema": {"type": "integer", "minimum": 1}}]
        if path == "/api/v1/applications" and method == "get":
            operation["parameters"] = [
                {"name": "page", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1}},
                {"name": "per_page", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": 500}}]
        if path.endswith("/catalog"):
            operation["parameters"] = [{"name": "q", "in": "query", "required": False,
                                        "schema": {"type": "string"}}]
        if method != "get":  # see portal.security.cross_site_problem
            operation.setdefault("parameters", []).append(
                {"name": "X-Requested-With", "in": "header", "required": False,
                 "description": "required unless the request carries this portal's Origin",
                 "schema": {"type": "string", "minLength": 1}})
        if body:
            operation["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{body}"}}}}
        paths.setdefault(path, {})[method] = operation
    return {"openapi": "3.1.0",
            "info": {"title": "Research portal API", "version": "1",
                     "description": "Applications, committee review, decisions and data use "
                                    "agreements. Sign in first (password and TOTP code); "
                                    "the session cookie authenticates later calls. Calls "
                                    "that change something send JSON (Content-Type: "
                                    "application/json) and either this portal's Origin or "
                                    "an X-Requested-With header."},
            "paths": paths, "components": {"schemas": schemas}}
