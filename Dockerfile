# syntax=docker/dockerfile:1
# wsidecar: a static binary on distroless — no shell, no package manager, nonroot.

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w -X main.version=${VERSION}" -o /out/wsidecar .

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/wsidecar /wsidecar
COPY sidecar.hcl /etc/wsidecar/sidecar.hcl
# 65532 is distroless's nonroot user; numeric so Kubernetes runAsNonRoot can verify it.
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/wsidecar"]
CMD ["run", "-config", "/etc/wsidecar/sidecar.hcl"]
