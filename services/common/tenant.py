"""The metadata by which the gateway tells the retriever which namespaces a call may touch."""

# Set by the gateway (gateway/auth.py) to the namespace the caller's API key was
# checked for; the retriever (services/retriever/servicer.py) refuses any other.
TENANT_HEADER = "x-rag-tenant-namespaces"
