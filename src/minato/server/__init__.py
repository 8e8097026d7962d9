"""The process: the command line, the HTTP server's connection bounds, serving the app."""
