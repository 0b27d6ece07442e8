module github.com/maze-ai/maze/bindings/go

go 1.26
