module github.com/gobps/gobps

go 1.26
