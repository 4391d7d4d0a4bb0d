// Where the dashboard finds the Airlift API.
//
// Empty: the server that served this page (the dashboard `airlift serve`
// embeds). When you put web/dashboard on another static host, write the
// API's address here, e.g. "https://airlift.example.com", and add this
// page's origin to the server's cors_origins (AIRLIFT_CORS_ORIGINS).
export const API = "";
