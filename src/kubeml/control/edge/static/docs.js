// Swagger UI from the vendored bundle. The schema and "Try it out" requests carry the API
// token kept in sessionStorage (the dashboard's field and this page's share it).
"use strict";

const TOKEN_KEY = "kubeml-token";

function withToken(request) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token && !request.headers.Authorization) request.headers.Authorization = "Bearer " + token;
  return request;
}

function start() {
  document.getElementById("message").textContent = "";
  window.ui = SwaggerUIBundle({
    url: "openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    persistAuthorization: true,
    requestInterceptor: withToken,
    responseInterceptor: (response) => {
      if (response.status === 401 && response.url.endsWith("openapi.json")) {
        document.getElementById("message").textContent =
          "This server needs its API token to show its API: enter it above.";
      }
      return response;
    },
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
}

document.getElementById("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const field = document.getElementById("token");
  sessionStorage.setItem(TOKEN_KEY, field.value.trim());
  field.value = "";
  start();
});
start();
