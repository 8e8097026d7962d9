// Starts the API docs page, Swagger UI or Scalar, with the options Minato wrote into the page as JSON.
// A file of Minato's own rather than an inline script, so the docs pages run scripts from 'self' only.
'use strict';
(() => {
  const { ui, mount, options } = JSON.parse(document.getElementById('minato-docs').textContent);
  if (ui === 'swagger') window.ui = window.SwaggerUIBundle(options);
  else window.Scalar.createApiReference(mount, options);
})();
