Scientists in Cedar Falls have found a new species of beetle.

The beetle was discovered in a forest near the river.

Researchers led by Tom Keller say it is about 2 centimeters long.

They named it after the town of Cedar Falls.

The team plans to return to the forest next spring.

@highlight

Scientists find a new species of beetle near Cedar Falls

@highlight

The beetle is about 2 centimeters long

