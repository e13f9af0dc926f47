"""The HDCWorkload operator (kopf) and hdcctl. ../shared/design/shape.md: pure builders, thin kopf handlers."""
