// Renders Keel's OpenAPI document (public/openapi.json, the same document
// GET /api/openapi.json answers) with the vendored Swagger UI. Everything
// comes from this origin: no CDN, no validator badge (its default sends the
// document to validator.swagger.io).
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#reference",
  deepLinking: true,
  validatorUrl: null,
  // Every tag open, every operation listed (its details on a click).
  docExpansion: "list",
  defaultModelsExpandDepth: 0,
});
